package cli

import (
	"fmt"

	"github.com/scanhook/scanhook/internal/alert"
	"github.com/scanhook/scanhook/internal/config"
)

// alertOptionsFromConfig reads the decoders' settings from a service config
// file; with no file, every decoder runs on its defaults.
func alertOptionsFromConfig(env Env, file string) (alert.Options, error) {
	if file == "" {
		return alert.Options{}, nil
	}
	cfg, err := loadConfig(env, file)
	if err != nil {
		return alert.Options{}, err
	}
	return cfg.AlertOptions(), nil
}

func loadConfig(env Env, file string) (*config.Config, error) {
	data, err := env.readFile(file)
	if err != nil {
		return nil, exitError{code: ExitInvalid, err: fmt.Errorf("read config %s: %w", file, unwrapPathError(err))}
	}
	cfg, err := config.Parse(file, data)
	if err != nil {
		return nil, exitError{code: ExitInvalid, err: fmt.Errorf("invalid config:\n%w", err)}
	}
	return cfg, nil
}
