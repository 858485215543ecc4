//! One module per scenario group (`--only org,users,cold,watch,store,replicas,budget,proxy,soak`), run
//! in this order.

pub(crate) mod budget;
pub(crate) mod cold;
pub(crate) mod org;
pub(crate) mod proxy;
pub(crate) mod replicas;
pub(crate) mod soak;
pub(crate) mod store;
pub(crate) mod users;
pub(crate) mod watch;
