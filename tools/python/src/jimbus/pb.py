"""The protobuf modules of jimbus's schemas (generated from proto/, see gen_proto.py).

    from jimbus.pb import bus_pb2, events_pb2
    events_pb2.Event(event_type="HEARTBEAT", session_id="s1", heartbeat=events_pb2.HeartbeatEvent(uptime=1))
"""

from jimbus._proto.jimbot.bus.v1 import bus_pb2
from jimbus._proto.jimbot.events.v1 import events_pb2

__all__ = ["bus_pb2", "events_pb2"]
