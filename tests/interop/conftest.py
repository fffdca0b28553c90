# The generated grpc_testing/test_pb2_grpc.py is named like a test module: not one.
collect_ignore_glob = ["grpc_testing/*"]
