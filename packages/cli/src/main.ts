/** Entry point of the `tsimg` command: parses argv, runs one subcommand, returns the exit status. */
export async function main(argv: string[]): Promise<number> {
  void argv;
  return 0;
}
