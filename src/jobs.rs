//! Jobs: the scheduler loop (schedules are parsed by [`crate::schedule`]), ([`scheduler`]),
//! named queues with worker limits ([`queue`]), exclusive per-source file
//! locks shared with `tabacco backup` ([`lock`]), one backup of a source
//! under its lock, the flow the agent and `tabacco backup` share
//! ([`backup`]), and the status of every job ([`status`]).

pub mod backup;
pub mod lock;
pub mod queue;
pub mod scheduler;
pub mod status;
