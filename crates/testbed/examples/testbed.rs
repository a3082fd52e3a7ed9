//! Builds the lab topology, prints its map and what the external server sees from each pod, and
//! removes it again (`--keep-for SECONDS` leaves it up that long to look around).
//!
//! `cargo run -p kube-egress-testbed --example testbed [-- --keep-for 60]` (as root).

use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keep_for = match args.as_slice() {
        [] => 0,
        [flag, secs] if flag == "--keep-for" => secs.parse()?,
        _ => return Err("usage: testbed [--keep-for SECONDS]".into()),
    };
    let started = Instant::now();
    let tb = kube_egress_testbed::Testbed::lab()?;
    let built = started.elapsed();
    print!("{tb}");
    println!("built in {} ms", built.as_millis());
    for pod in tb.pods() {
        let reply = pod.http_get(&tb.server().url())?;
        println!(
            "{}/{} ({}) -> {}: the server saw {}",
            pod.namespace(),
            pod.name(),
            pod.ip(),
            tb.server().url(),
            reply.body.trim()
        );
    }
    std::thread::sleep(Duration::from_secs(keep_for));
    let started = Instant::now();
    tb.destroy()?;
    println!("removed in {} ms", started.elapsed().as_millis());
    Ok(())
}
