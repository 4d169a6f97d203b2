package main

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"vdisk/block"
	"vdisk/format/qcow2"
)

// openFlags are the flags shared by commands that open an image.
type openFlags struct {
	format     string
	forceShare bool
	cacheSize  string
	meta       metaCacheFlags
	check      bool // opening for a check (see block.OpenOptions.Check)
	resize     bool // opening to resize (see block.OpenOptions.Resize)
}

// metaCacheFlags are QEMU's qcow2 runtime options l2-cache-size and
// refcount-cache-size.
type metaCacheFlags struct{ l2, refcount string }

func (m *metaCacheFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&m.l2, "l2-cache-size", "", "qcow2 L2 table cache size (e.g. 32M; default 4M, at least 4 clusters)")
	fs.StringVar(&m.refcount, "refcount-cache-size", "", "qcow2 refcount block cache size (e.g. 1M; default 1M, at least 4 clusters)")
}

// apply parses the flags into o.
func (m *metaCacheFlags) apply(o *block.OpenOptions) error {
	for _, f := range []struct {
		name, v string
		dst     *int64
	}{{"l2-cache-size", m.l2, &o.L2CacheSize}, {"refcount-cache-size", m.refcount, &o.RefcountCacheSize}} {
		if f.v == "" {
			continue
		}
		n, err := block.ParseSize(f.v)
		if err != nil {
			return fmt.Errorf("--%s: %w", f.name, err)
		}
		if n == 0 {
			return fmt.Errorf("--%s: the size must not be zero", f.name)
		}
		if n > qcow2.MaxCacheBytes {
			return fmt.Errorf("--%s: %s is too large (at most %s)", f.name, block.FormatSize(n), block.FormatSize(qcow2.MaxCacheBytes))
		}
		*f.dst = n
	}
	return nil
}

func (o *openFlags) register(fs *pflag.FlagSet, withShare bool) {
	fs.StringVarP(&o.format, "format", "f", "", "image format (probed when omitted)")
	if withShare {
		fs.BoolVarP(&o.forceShare, "force-share", "U", false, "open the image even if another process uses it (read-only)")
	}
	fs.StringVar(&o.cacheSize, "cache-size", "", "read cache size (e.g. 64M)")
	o.meta.register(fs)
}

func (o *openFlags) cache() (int64, error) {
	if o.cacheSize == "" {
		return 0, nil
	}
	n, err := block.ParseSize(o.cacheSize)
	if err != nil {
		return 0, fmt.Errorf("--cache-size: %w", err)
	}
	return n, nil
}

// open opens name with these flags.
func (o *openFlags) open(name string, readOnly bool, noBacking bool) (block.Image, error) {
	cs, err := o.cache()
	if err != nil {
		return nil, err
	}
	if o.forceShare && !readOnly {
		return nil, fmt.Errorf("%s: --force-share (-U) is only allowed for read-only access", name)
	}
	opts := block.OpenOptions{
		Format:     o.format,
		ReadOnly:   readOnly,
		ForceShare: o.forceShare,
		NoBacking:  noBacking,
		CacheSize:  cs,
		Check:      o.check,
		Resize:     o.resize,
	}
	if err := o.meta.apply(&opts); err != nil {
		return nil, err
	}
	return block.Open(name, opts)
}

// outputFormat validates --output.
func outputFormat(s string) (string, error) {
	switch s {
	case "human", "json":
		return s, nil
	}
	return "", exitCode(1, fmt.Errorf("--output must be 'human' or 'json', not '%s'", s))
}

// usageError is an error in the command line: wrong argument count etc.
func usageError(cmd *cobra.Command, format string, a ...any) error {
	return exitCode(1, fmt.Errorf("%s\nTry 'vdisk help %s' for more information.", fmt.Sprintf(format, a...), cmd.Name()))
}

// exactArgs is cobra.ExactArgs with vdisk's message.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError(cmd, "%s expects %d argument%s, got %d: usage: %s", cmd.Name(), n, plural(n), len(args), "vdisk "+cmd.Use)
		}
		return nil
	}
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// wantsHelp reports whether an -o string asks for the option list.
func wantsHelp(opt string) bool {
	pairs, err := block.SplitOptionString(opt)
	if err != nil {
		return false
	}
	for _, p := range pairs {
		if p[0] == "help" || p[0] == "?" {
			return true
		}
	}
	return false
}
