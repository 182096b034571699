//! Prints the rule family the prompt-injection detector reports for each line of stdin.
fn main() {
    for line in std::io::stdin().lines().map_while(Result::ok) {
        println!("{:?}\t{line}", tenantgate_gateway::policy::injection::detect(&line));
    }
}
