//! Runs the demo plugin on its own; see the crate documentation for the start-up handshake.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    sphere_plugin_hello::run().await
}
