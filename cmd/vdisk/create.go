package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"vdisk/block"
	"vdisk/imgtool"
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
unwritten ranges from BACKING (whose format -F names), and SIZE defaults to
the backing image's size. -o help lists the options of the format.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if wantsHelp(opts) {
				name := format
				if name == "" {
					name = "raw"
				}
				f, err := block.Lookup(name)
				if err != nil {
					return err
				}
				fmt.Print(imgtool.OptionHelp(f))
				return nil
			}
			if len(args) < 1 || len(args) > 2 {
				return usageError(cmd, "create expects FILE [SIZE], got %d arguments", len(args))
			}
			r := imgtool.CreateRequest{Name: args[0], Format: format, Options: opts,
				Backing: backing, BackingFormat: backingFmt, Size: -1}
			if len(args) == 2 {
				size, err := block.ParseSize(args[1])
				if err != nil {
					return fmt.Errorf("%s: %w; you may use K, M, G, T, P or E suffixes", args[0], err)
				}
				r.Size = size
			}
			f, o, err := imgtool.PrepareCreate(r)
			if err != nil {
				return err
			}
			if !quiet {
				fmt.Println(imgtool.FormattingLine(r.Name, f, o))
			}
			return block.Create(r.Name, f.Name, o)
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
