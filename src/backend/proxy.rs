//! Proxied methods: calls of `backend.methods` POSTed to `{url}/rpc/{method}`, answered with
//! JSON or streamed as NDJSON.
