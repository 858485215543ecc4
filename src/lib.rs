pub mod proto {
    tonic::include_proto!("tokenbroker.v1");
}
