wrk.method="POST"
wrk.headers["Content-Type"]="application/json"
wrk.body="{\"batch_id\":\"b-1\",\"events\":[{\"type\":\"MONEY_CHANGED\",\"source\":\"BalatroMCP\",\"payload\":{\"old_value\":5,\"new_value\":9,\"difference\":4},\"timestamp\":1700000000000,\"version\":1}],\"source\":\"BalatroMCP\",\"timestamp\":1700000000000}"
