fn main() {
    std::process::exit(fmnist::cli::main());
}
