//! `lanyard`: the CLI and the CNI plugin (see the `lanyard_app` library).

fn main() {
    lanyard_app::main_cli()
}
