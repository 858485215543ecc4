// Loads the TokenService client class from the committed proto.json (see generate.js): the
// package cannot read the repository's .proto files once installed, and a JSON
// descriptor needs no protoc at install time.
'use strict';
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const descriptor = require('../proto.json');

/**
 * How messages decode: 64-bit integers as decimal strings (generation, Timestamp
 * seconds), enums by name, unset scalars as their defaults and unset messages as null.
 */
const LOADER_OPTIONS = Object.freeze({ longs: String, enums: String, defaults: true });

/** The package definition of tokenbroker.v1 and its well-known types. */
const definition = protoLoader.fromJSON(descriptor, LOADER_OPTIONS);

/** The grpc-js client class of tokenbroker.v1.TokenService. */
const TokenServiceClient = grpc.loadPackageDefinition(definition).tokenbroker.v1.TokenService;

module.exports = { definition, TokenServiceClient, LOADER_OPTIONS };
