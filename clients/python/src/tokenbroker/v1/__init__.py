"""The generated tokenbroker.v1 protobuf and gRPC stubs (see generate.sh; do not edit them).

Import them for raw calls: ``from tokenbroker.v1 import token_service_pb2``.
"""
