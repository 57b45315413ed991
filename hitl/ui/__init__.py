"""The reviewer and admin web UI: server-rendered pages whose actions call the JSON APIs."""
