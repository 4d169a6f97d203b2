package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"vdisk/block"
	nbdexport "vdisk/export/nbd"
	"vdisk/nbd"
)

var serveFlags struct {
	format      string
	readOnly    bool
	socket      string
	bind        string
	port        int
	name        string
	description string
	shared      int
	persistent  bool
	tlsCert     string
	tlsKey      string
	tlsCA       string
	cacheSize   string
	meta        metaCacheFlags
	exports     []string
	pidFile     string
	verbose     bool
}

var serveCmd = &cobra.Command{
	Use:   "serve [flags] [FILE]",
	Short: "Serve images over NBD (like qemu-nbd)",
	Long: `Serve one or more images over the Network Block Device protocol.

FILE is served under the export name given by --name (default ""). More
exports are added with --export NAME=FILE[,format=F][,readonly]; all are
listed by NBD_OPT_LIST. The server listens on --bind:--port (default
127.0.0.1:10809) or on a Unix socket (--socket). Without --persistent it
exits when the last client disconnects after the first session; --shared
bounds simultaneous connections (default 1). With --tls-cert/--tls-key,
clients must use TLS; with --tls-ca they must also present a certificate
signed by that CA.`,
	Args: cobra.MaximumNArgs(1),
	RunE: runServe,
}

func init() {
	f := serveCmd.Flags()
	f.StringVarP(&serveFlags.format, "format", "f", "", "image format of FILE (default: probe)")
	f.BoolVarP(&serveFlags.readOnly, "read-only", "r", false, "export read-only")
	f.StringVarP(&serveFlags.socket, "socket", "k", "", "listen on this Unix socket instead of TCP")
	f.StringVarP(&serveFlags.bind, "bind", "b", "127.0.0.1", "address to listen on")
	f.IntVarP(&serveFlags.port, "port", "p", nbd.DefaultPort, "TCP port to listen on")
	f.StringVarP(&serveFlags.name, "name", "x", "", "export name of FILE")
	f.StringVarP(&serveFlags.description, "description", "D", "", "export description of FILE")
	f.IntVarP(&serveFlags.shared, "shared", "e", 1, "maximum simultaneous connections (0 = unlimited)")
	f.BoolVarP(&serveFlags.persistent, "persistent", "t", false, "keep serving after the last client disconnects")
	f.StringVar(&serveFlags.tlsCert, "tls-cert", "", "server certificate (PEM); enables and requires TLS")
	f.StringVar(&serveFlags.tlsKey, "tls-key", "", "server private key (PEM)")
	f.StringVar(&serveFlags.tlsCA, "tls-ca", "", "CA (PEM) that client certificates must be signed by")
	f.StringVar(&serveFlags.cacheSize, "cache-size", "", "read cache size per image (e.g. 64M)")
	serveFlags.meta.register(f)
	f.StringArrayVar(&serveFlags.exports, "export", nil, "add an export NAME=FILE[,format=F][,readonly] (repeatable)")
	f.StringVar(&serveFlags.pidFile, "pid-file", "", "write the server's PID to this file once it listens")
	f.BoolVarP(&serveFlags.verbose, "verbose", "v", false, "log client errors to stderr")
	rootCmd.AddCommand(serveCmd)
}

type exportSpec struct {
	name, file, format, description string
	readOnly                        bool
}

func parseExportFlag(s string) (exportSpec, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok {
		return exportSpec{}, fmt.Errorf("serve: --export %q: expected NAME=FILE[,format=F][,readonly]", s)
	}
	parts := strings.Split(rest, ",")
	spec := exportSpec{name: name, file: parts[0]}
	if spec.file == "" {
		return exportSpec{}, fmt.Errorf("serve: --export %q: missing file", s)
	}
	for _, p := range parts[1:] {
		k, v, _ := strings.Cut(p, "=")
		switch k {
		case "format":
			spec.format = v
		case "readonly":
			spec.readOnly = v == "" || v == "on" || v == "true"
		case "description":
			spec.description = v
		default:
			return exportSpec{}, fmt.Errorf("serve: --export %q: unknown option '%s'", s, k)
		}
	}
	return spec, nil
}

func runServe(cmd *cobra.Command, args []string) error {
	var specs []exportSpec
	if len(args) == 1 {
		specs = append(specs, exportSpec{name: serveFlags.name, file: args[0], format: serveFlags.format,
			description: serveFlags.description, readOnly: serveFlags.readOnly})
	}
	for _, e := range serveFlags.exports {
		spec, err := parseExportFlag(e)
		if err != nil {
			return err
		}
		spec.readOnly = spec.readOnly || serveFlags.readOnly
		specs = append(specs, spec)
	}
	if len(specs) == 0 {
		return errors.New("serve: nothing to serve: give FILE or --export NAME=FILE")
	}
	seen := map[string]bool{}
	for _, s := range specs {
		if seen[s.name] {
			return fmt.Errorf("serve: export name '%s' given twice", s.name)
		}
		seen[s.name] = true
		if len(s.name) > nbd.MaxString || len(s.description) > nbd.MaxString {
			return fmt.Errorf("serve: export name or description longer than %d bytes", nbd.MaxString)
		}
	}
	var cache int64
	if serveFlags.cacheSize != "" {
		n, err := block.ParseSize(serveFlags.cacheSize)
		if err != nil {
			return fmt.Errorf("serve: --cache-size: %w", err)
		}
		cache = n
	}
	var meta block.OpenOptions
	if err := serveFlags.meta.apply(&meta); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	if serveFlags.shared < 0 {
		return errors.New("serve: --shared must be 0 or more")
	}

	srv := &nbdexport.Server{MaxConns: serveFlags.shared}
	if serveFlags.verbose {
		srv.Logf = func(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) }
	}
	if serveFlags.tlsCert != "" || serveFlags.tlsKey != "" {
		cfg, err := serverTLS(serveFlags.tlsCert, serveFlags.tlsKey, serveFlags.tlsCA)
		if err != nil {
			return err
		}
		srv.TLS = cfg
	} else if serveFlags.tlsCA != "" {
		return errors.New("serve: --tls-ca needs --tls-cert and --tls-key")
	}

	var images []block.Image
	closeAll := func() error {
		var errs []error
		for _, img := range images {
			errs = append(errs, img.Close())
		}
		return errors.Join(errs...)
	}
	for _, s := range specs {
		img, err := block.Open(s.file, block.OpenOptions{Format: s.format, ReadOnly: s.readOnly, CacheSize: cache,
			L2CacheSize: meta.L2CacheSize, RefcountCacheSize: meta.RefcountCacheSize})
		if err != nil {
			closeAll()
			return err
		}
		images = append(images, img)
		srv.Exports = append(srv.Exports, &nbdexport.Export{Name: s.name, Description: s.description, Image: img})
	}

	var l net.Listener
	var err error
	removeSocket := func() {}
	if serveFlags.socket != "" {
		l, removeSocket, err = listenUnix(serveFlags.socket)
	} else {
		l, err = net.Listen("tcp", net.JoinHostPort(serveFlags.bind, strconv.Itoa(serveFlags.port)))
	}
	if err != nil {
		closeAll()
		return fmt.Errorf("serve: %w", err)
	}

	done := make(chan struct{})
	var stopOnce sync.Once
	stop := func() { stopOnce.Do(func() { close(done) }) }
	if !serveFlags.persistent {
		srv.OnIdle = stop
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() {
		select {
		case <-sigs:
			stop()
		case <-done:
		}
	}()

	if serveFlags.pidFile != "" {
		if err := os.WriteFile(serveFlags.pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			l.Close()
			removeSocket()
			closeAll()
			return fmt.Errorf("serve: --pid-file: %w", err)
		}
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()

	var runErr error
	select {
	case <-done:
	case err := <-serveErr:
		if !errors.Is(err, nbdexport.ErrServerClosed) {
			runErr = fmt.Errorf("serve: %w", err)
		}
	}
	shutdown := make(chan struct{})
	go func() { srv.Shutdown(); close(shutdown) }()
	select {
	case <-shutdown:
	case <-time.After(30 * time.Second):
		runErr = errors.Join(runErr, errors.New("serve: requests still running after 30s; exiting anyway"))
	}
	signal.Stop(sigs)
	removeSocket()
	if serveFlags.pidFile != "" {
		os.Remove(serveFlags.pidFile)
	}
	return errors.Join(runErr, closeAll())
}

func serverTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("serve: TLS needs both --tls-cert and --tls-key")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("serve: loading TLS certificate: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("serve: --tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("serve: --tls-ca %s: no certificates found", caFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
