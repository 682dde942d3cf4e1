// Command pgcourier carries Postgres changes home from the field: it captures
// a node's committed changes into a durable outbox and ships them upstream
// exactly once and in order. Run "pgcourier help" for the commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/pgcourier/pgcourier/config"
	"github.com/pgcourier/pgcourier/internal/schema"
)

// Exit codes shared by every command.
const (
	exitOK    = 0 // done; every check passed
	exitFail  = 1 // the command ran and something failed
	exitUsage = 2 // bad command line or configuration
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version string

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// command is one "pgcourier NAME" subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"init", "create the pgcourier schema in the node's database (idempotent)", runInit},
		{"run", "run the node's role until SIGINT or SIGTERM", runRun},
		{"status", "show what is pending, stuck or failing on the node", runStatus},
		{"doctor", "check the node's database and print the fix for every problem", runDoctor},
		{"conflicts", "list the changes the applier kept instead of applying", runConflicts},
		{"resync", "start a new epoch with a fresh snapshot after the replication slot was lost", runResync},
		{"park", "set aside the batch a source is blocked on, keeping it whole, so the rest can flow", runPark},
		{"token", "print a new token for a node and the lines its upstream needs", runToken},
		{"demo", "run two laptops and a server on throw-away Postgres clusters, and check the result", runDemo},
		{"version", "print the version", runVersion},
	}
}

// run executes the command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "pgcourier: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: pgcourier COMMAND [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, `Run "pgcourier COMMAND -h" for a command's flags.`)
}

// configFlags parses the flags of a command that takes "-c FILE" and loads
// the configuration. On failure it has already printed why and returns the
// exit code in code.
func configFlags(name string, args []string, stderr io.Writer, extra func(*flag.FlagSet)) (cfg *config.Config, fs *flag.FlagSet, code int) {
	fs = flag.NewFlagSet("pgcourier "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "", "the node's configuration `FILE` (TOML)")
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, fs, exitOK
		}
		return nil, fs, exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "pgcourier %s: unexpected argument %q\n", name, fs.Arg(0))
		return nil, fs, exitUsage
	}
	if *path == "" {
		fmt.Fprintf(stderr, "pgcourier %s: missing -c FILE (the node's configuration)\n", name)
		return nil, fs, exitUsage
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier %s: %v\n", name, err)
		return nil, fs, exitUsage
	}
	return cfg, fs, exitOK
}

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintf(stderr, "pgcourier version: unexpected argument %q\n", args[0])
		return exitUsage
	}
	fmt.Fprintf(stdout, "pgcourier %s (%s, schema version %d)\n", versionString(), runtime.Version(), schema.Latest())
	return exitOK
}

// versionString returns the version set at build time, or the module's.
func versionString() string {
	if version != "" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok && info.Main.Version != "" {
		return info.Main.Version
	}
	return "(devel)"
}
