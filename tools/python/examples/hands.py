"""The five-line example of README.md: print each scored hand's trigger count."""

from jimbus import Client

with Client("127.0.0.1:50051") as client:
    for hand in client.hands():
        print(hand.cascade_info.cascade_id, hand.cascade_info.trigger_count)
