//! The targets, one module each.

pub mod beacon;
pub mod frame;
pub mod message;
pub mod resume_state;
pub mod stun;
pub mod swarm;
