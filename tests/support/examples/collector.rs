//! The test collector as a program, for benchmarks that need a reachable OTLP endpoint:
//! `collector PORT` serves on 127.0.0.1:PORT until killed, answering every export OK and
//! keeping only counts (a long run must not grow).

fn main() {
    let Some(port) = std::env::args().nth(1).and_then(|p| p.parse::<u16>().ok()) else {
        eprintln!("usage: collector PORT");
        std::process::exit(2);
    };
    let collector = emberprof_test_support::collector::TestCollector::start_on(port);
    collector.keep_nothing();
    eprintln!("collector listening on 127.0.0.1:{port}");
    loop {
        std::thread::park();
    }
}
