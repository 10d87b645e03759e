//! `lanyardd`: the `lanyard` CLI plus `lanyard daemon` and the etcd store (see the
//! `lanyard_app` library).

fn main() {
    lanyard_app::main_full()
}
