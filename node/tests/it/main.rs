//! Integration tests: real `sphere` node processes, each with its real demo plugin process, on
//! 127.0.0.1 with port 0.

mod background;
mod durability;
mod errors;
mod files;
mod harness;
mod lifecycle;
mod mesh;
mod metrics;
mod payments;
mod plugins;
mod proxy;
mod scheduler;
mod security;
mod storage;
mod tasks;
