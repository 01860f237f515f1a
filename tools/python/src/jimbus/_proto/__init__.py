"""Protobuf modules generated from proto/ (see gen_proto.py)."""
