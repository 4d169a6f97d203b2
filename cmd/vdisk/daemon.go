package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"vdisk/attach"
	"vdisk/attach/ctl"
)

// addStateDirFlag gives a command --state-dir; the value resolves through
// ctl.StateDir (flag, then $VDISK_STATE_DIR, then /run/vdisk).
func addStateDirFlag(c *cobra.Command, p *string) {
	c.Flags().StringVar(p, "state-dir", "", "daemon state directory (default $VDISK_STATE_DIR or "+ctl.DefaultStateDir+")")
}

func init() {
	var stateDir string
	var foreground, trace bool
	c := &cobra.Command{
		Use:   "daemon [--state-dir DIR] [--foreground] [--trace]",
		Short: "Run the daemon that hosts attached units",
		Long: `Run the daemon that hosts attached units (vd0, vd1, …) and answers
control requests on STATE_DIR/daemon.sock. Without --foreground it starts in
the background and returns once it answers; with --foreground it stays
attached to the terminal (for systemd and other service managers) and logs
to stderr. SIGTERM or SIGINT flush and detach every unit, then it exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := ctl.StateDir(stateDir)
			if !foreground {
				if err := ctl.NewClient(dir).Ping(); err == nil {
					return fmt.Errorf("a daemon is already running with state directory %s", dir)
				}
				if err := startDaemon(dir, trace); err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "vdisk: started the daemon in the background (state directory %s)\n", dir)
				return nil
			}
			return runDaemon(dir, trace)
		},
	}
	addStateDirFlag(c, &stateDir)
	c.Flags().BoolVar(&foreground, "foreground", false, "stay in the foreground and log to stderr")
	c.Flags().BoolVar(&trace, "trace", false, "log every I/O request (unit, op, offset, length, latency)")
	rootCmd.AddCommand(c)
}

func runDaemon(dir string, trace bool) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	d, err := attach.New(attach.Config{StateDir: dir, Trace: trace, Log: log})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	log.Info("daemon started", "state-dir", dir, "pid", os.Getpid())
	err = d.Serve(ctx)
	log.Info("daemon stopped")
	return err
}

// startDaemon runs `vdisk daemon --foreground` in a session of its own,
// logging to STATE_DIR/daemon.log, and waits until it answers.
func startDaemon(dir string, trace bool) error {
	// Before the log goes into it: a directory that must not be used
	// gets no file of ours either.
	if err := attach.PrepareStateDir(dir); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("starting the daemon: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(dir, ctl.LogName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("starting the daemon: %w", err)
	}
	defer logf.Close()
	args := []string{"daemon", "--foreground", "--state-dir", dir}
	if trace {
		args = append(args, "--trace")
	}
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the daemon: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	c := ctl.NewClient(dir)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if err := c.Ping(); err == nil {
			return nil
		}
		select {
		case err := <-exited:
			// Another attach may have started a daemon at the same time;
			// ours then found the state directory taken and left.
			if c.Ping() == nil {
				return nil
			}
			return fmt.Errorf("the daemon exited at once (%v); see %s", err, filepath.Join(dir, ctl.LogName))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("the daemon did not answer in time; see " + filepath.Join(dir, ctl.LogName))
		}
	}
}
