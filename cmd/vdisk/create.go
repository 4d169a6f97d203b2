package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"vdisk/block"
)

func init() {
	var (
		format, opts, backing, backingFmt string
		quiet                             bool
	)
	cmd := &cobra.Command{
		Use:   "create [-f FMT] [-o OPT=VAL,...] [-b BACKING [-F BACKING_FMT]] FILE [SIZE]",
		Short: "Create a new image",
		Long: `Create a new image FILE of format FMT (default raw) and virtual size SIZE
(bytes, or with a K, M, G, T, P or E suffix). With -b, the new image reads
unwritten ranges from BACKING, and SIZE defaults to the backing image's size.
-o help lists the options of the format.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if format == "" {
				format = "raw"
			}
			f, err := block.Lookup(format)
			if err != nil {
				return err
			}
			if wantsHelp(opts) {
				fmt.Print(optionHelp(f))
				return nil
			}
			if len(args) < 1 || len(args) > 2 {
				return usageError(cmd, "create expects FILE [SIZE], got %d arguments", len(args))
			}
			name := args[0]
			pairs, err := block.SplitOptionString(opts)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if backing != "" || backingFmt != "" {
				if !hasSpec(f, "backing_file") {
					return fmt.Errorf("%s: backing file not supported for file format '%s'", name, f.Name)
				}
				if backing == "" {
					return fmt.Errorf("%s: -F needs a backing file (-b)", name)
				}
				pairs = append(pairs, [2]string{"backing_file", backing})
			}
			if len(args) == 2 {
				size, err := block.ParseSize(args[1])
				if err != nil {
					return fmt.Errorf("%s: %w; you may use K, M, G, T, P or E suffixes", name, err)
				}
				pairs = append(pairs, [2]string{"size", strconv.FormatInt(size, 10)})
			}
			if backing != "" {
				// qemu-img refuses to guess the backing format, because a
				// guest could make a raw backing file look like anything.
				full := block.ResolveBacking(name, backing)
				bimg, err := block.Open(full, block.OpenOptions{Format: backingFmt, ReadOnly: true, NoBacking: true})
				if err != nil {
					if len(args) == 2 && backingFmt != "" {
						// The backing file need not exist when size and format are given.
						fmt.Fprintf(cmd.ErrOrStderr(), "vdisk: warning: could not open backing file '%s': %v\n", backing, err)
					} else {
						return fmt.Errorf("%s: could not open backing image: %w", name, err)
					}
				} else {
					detected := bimg.Info
					if backingFmt == "" {
						in, ierr := detected()
						bimg.Close()
						if ierr != nil {
							return fmt.Errorf("%s: %w", backing, ierr)
						}
						return fmt.Errorf("%s: backing file specified without backing format (detected format of %s); use -F %s", name, in.Format, in.Format)
					}
					if len(args) == 1 {
						pairs = append(pairs, [2]string{"size", strconv.FormatInt(bimg.Size(), 10)})
					}
					bimg.Close()
				}
				pairs = append(pairs, [2]string{"backing_fmt", backingFmt})
			}
			if !hasPair(pairs, "size") {
				return fmt.Errorf("%s: image creation needs a size parameter", name)
			}
			o, err := block.ParseOptions(f.CreateOptions, pairs)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if !quiet {
				fmt.Println(formattingLine(name, f, o))
			}
			if err := block.Create(name, f.Name, o); err != nil {
				return err
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&format, "format", "f", "", "image format (default raw)")
	fs.StringVarP(&opts, "options", "o", "", "format options, OPT=VAL,... ('-o help' lists them)")
	fs.StringVarP(&backing, "backing", "b", "", "backing image")
	fs.StringVarP(&backingFmt, "backing-format", "F", "", "format of the backing image")
	fs.BoolVarP(&quiet, "quiet", "q", false, "print nothing on success")
	rootCmd.AddCommand(cmd)
}

func hasSpec(f *block.Format, name string) bool {
	for _, s := range f.CreateOptions {
		if s.Name == name {
			return true
		}
	}
	return false
}

func hasPair(pairs [][2]string, name string) bool {
	for _, p := range pairs {
		if p[0] == name {
			return true
		}
	}
	return false
}

// formattingLine is qemu-img create's first line: the options in the
// order the format declares them.
func formattingLine(name string, f *block.Format, o block.Options) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Formatting '%s', fmt=%s", name, f.Name)
	for _, s := range f.CreateOptions {
		v, ok := o[s.Name]
		if !ok {
			continue
		}
		switch x := v.(type) {
		case bool:
			if x {
				v = "on"
			} else {
				v = "off"
			}
		}
		fmt.Fprintf(&b, " %s=%v", s.Name, v)
	}
	return b.String()
}
