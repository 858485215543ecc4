#!/usr/bin/env bash
# tokenbroker from the shell, through server reflection (no proto file needed).
# Run the demo broker first: cargo run --release -- demo
set -euo pipefail
broker=${BROKER:-127.0.0.1:50051}
# With callers configured, add: -H "authorization: Bearer $KEY"
grpcurl -plaintext "$broker" list tokenbroker.v1.TokenService
grpcurl -plaintext -d '{}' "$broker" tokenbroker.v1.TokenService/GetOrgToken
grpcurl -plaintext -d '{"user_id": "EMP-00001", "min_valid_for": "300s"}' "$broker" tokenbroker.v1.TokenService/GetUserToken
grpcurl -plaintext -d '{"user_id": "EMP-00001"}' "$broker" tokenbroker.v1.TokenService/Refresh
# The current token, then every rotation (stops after 3 s here).
grpcurl -plaintext -max-time 3 -d '{}' "$broker" tokenbroker.v1.TokenService/WatchTokens || true
grpcurl -plaintext -d '{"service": "tokenbroker.v1.TokenService"}' "$broker" grpc.health.v1.Health/Check
