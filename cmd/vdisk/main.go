// Command vdisk reads, writes, converts, serves and attaches virtual-disk
// images (raw, qcow2, vhd) without QEMU and without a kernel module.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	_ "vdisk/drivers"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

// exitError carries a specific exit status (qemu-img's codes: check
// returns 2 for corruptions, compare 1 for different images, ...).
type exitError struct {
	code int
	err  error // printed when non-nil
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

// exitCode returns an error that makes vdisk exit with code, printing err
// if it is not nil.
func exitCode(code int, err error) error { return &exitError{code: code, err: err} }

var rootCmd = &cobra.Command{
	Use:           "vdisk",
	Short:         "Virtual-disk images without QEMU: inspect, convert, serve and attach raw, qcow2 and vhd",
	Version:       version,
	SilenceUsage:  true,
	SilenceErrors: true,
	Args:          cobra.NoArgs,
	RunE: func(cmd *cobra.Command, args []string) error {
		return exitCode(1, errors.New("missing command; try 'vdisk --help'"))
	},
}

// argFixups rewrite the command line before flag parsing, for commands
// whose arguments look like flags.
var argFixups []func([]string) []string

func main() {
	rootCmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return exitCode(1, fmt.Errorf("%w\nTry 'vdisk help %s' for more information.", err, c.Name()))
	})
	os.Exit(run(os.Args[1:]))
}

// run executes a command line and returns the exit status. Panics are
// turned into an error message: a user never sees a Go stack trace.
func run(args []string) (code int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "vdisk: internal error: %v\n", r)
			code = 1
		}
	}()
	for _, f := range argFixups {
		args = f(args)
	}
	rootCmd.SetArgs(args)
	err := rootCmd.Execute()
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(os.Stderr, "vdisk: %v\n", ee.err)
		}
		return ee.code
	}
	fmt.Fprintf(os.Stderr, "vdisk: %v\n", err)
	return 1
}
