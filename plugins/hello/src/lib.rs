//! Sphere's demo plugin: answers the input `hello` with `world` and echoes any other input.
//!
//! A Sphere node with no plugin configured starts it as a child process (`sphere demo-plugin`);
//! it also runs on its own as `sphere-plugin-hello`. It is also the smallest example of the Rust
//! plugin SDK, [`sphere_plugin`].

use sphere_plugin::{Bytes, Description, Plugin, Task, TaskError};

/// The plugin's name, as reported by `Describe`.
pub const NAME: &str = "hello";

/// Answers `hello` with `world` and echoes anything else.
#[derive(Debug, Default, Clone, Copy)]
pub struct HelloPlugin;

#[sphere_plugin::async_trait]
impl Plugin for HelloPlugin {
    fn describe(&self) -> Description {
        Description::new(
            NAME,
            env!("CARGO_PKG_VERSION"),
            "answers \"hello\" with \"world\" and echoes any other input",
        )
        .pure()
    }

    async fn execute(&self, task: Task) -> Result<Bytes, TaskError> {
        if task.input == b"hello".as_slice() {
            Ok(Bytes::from_static(b"world"))
        } else {
            Ok(task.input)
        }
    }
}

/// Runs the plugin as a process (see [`sphere_plugin::run`]).
pub async fn run() -> Result<(), sphere_plugin::BoxError> {
    sphere_plugin::run(HelloPlugin).await
}
