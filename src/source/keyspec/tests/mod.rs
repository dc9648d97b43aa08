//! Tests of the key-spec module: against a real `redis-server` (which must agree with the local
//! answer), and on hand-made `COMMAND` replies (algorithm corners and reply shapes, no server).

mod real_server;
mod redis_server;
mod support;
mod synthetic;
mod workload;
