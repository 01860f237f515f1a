from jimbus import Client

with Client() as client:  # $JIMBUS_GRPC_TARGET, else 127.0.0.1:50051
    for hand in client.hands():
        print(hand.cascade_info.cascade_id, hand.cascade_info.trigger_count)
