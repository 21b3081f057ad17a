//! Runs the demo plugin on its own.

#[tokio::main]
async fn main() -> Result<(), sphere_plugin::BoxError> {
    sphere_plugin_hello::run().await
}
