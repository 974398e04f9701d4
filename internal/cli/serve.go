package cli

import (
	"context"
	"flag"
	"fmt"

	"github.com/scanhook/scanhook/internal/app"
)

// serve parses `scanhook serve` and runs the service until ctx ends
// (SIGINT or SIGTERM).
func serve(ctx context.Context, args []string, env Env) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	configFile := fs.String("config", env.getenv("SCANHOOK_CONFIG"), "service config file (or SCANHOOK_CONFIG)")
	demo := fs.Bool("demo", false, "run with no setup: SQLite in a temporary folder, the built-in Defender simulator, the example rules")
	listen := fs.String("listen", "", "listen address, overriding the config's `listen`")
	fs.Usage = func() {
		fmt.Fprintln(env.Stderr, "Usage: scanhook serve [--config FILE] [--demo] [--listen ADDR]\n\nRuns the service: webhooks in, Defender scans out.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagErr(err)
	}
	if fs.NArg() > 0 {
		return usagef("serve: unexpected argument %q", fs.Arg(0))
	}
	if *demo {
		explicit := false
		fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
		if explicit {
			return usagef("serve: --demo brings its own config; drop --config")
		}
		return app.RunDemo(ctx, env.app(), *listen)
	}
	if *configFile == "" {
		return usagef("serve: --config is required (or try --demo)")
	}
	cfg, err := loadConfig(env, *configFile)
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	return app.Run(ctx, cfg, env.app(), app.Hooks{})
}
