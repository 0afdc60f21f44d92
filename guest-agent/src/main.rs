//! `guest-agent`: see the crate docs and `--help`.

use guest_agent::agent::config::{Command, Config, USAGE};
use guest_agent::agent::run::Agent;

fn main() {
    let cfg = match Config::parse(std::env::args().skip(1)) {
        Ok(Command::Run(c)) => c,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("guest-agent: {e}");
            std::process::exit(2);
        }
    };
    let result = Agent::new(cfg).and_then(|mut a| a.run());
    if let Err(e) = result {
        eprintln!("guest-agent: {e}");
        std::process::exit(1);
    }
}
