package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"vdisk/imgtool"
)

func init() {
	var (
		of       openFlags
		readOnly bool
		timing   bool
		cmds     []string
	)
	cmd := &cobra.Command{
		Use:   "io [-f FMT] [-r] [-U] [-t] -c CMD [-c CMD ...] FILE",
		Short: "Run qemu-io style commands against an image",
		Long: `Run qemu-io style commands against an image, in order:

  read [-P PATTERN] [-v] [-q] OFF LEN   read, verify every byte is PATTERN (-P), hex dump (-v)
  write [-P PATTERN | -z [-u]] [-q] OFF LEN
                                        write PATTERN (default 0xcd) or zeros (-z; -u may unmap)
  discard [-q] OFF LEN                  discard a range
  flush                                 make written data durable
  map                                   show which ranges this layer allocates
  info                                  show format information
  length                                show the virtual size

OFF and LEN take K, M, G, ... suffixes. Every command runs even after one
fails; the exit status is then 1. -t adds qemu-io's timing lines.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(cmds) == 0 {
				return usageError(cmd, "io needs at least one -c CMD")
			}
			if of.forceShare && !readOnly {
				return usageError(cmd, "-U requires -r (force-share is for read-only access)")
			}
			img, err := of.open(args[0], readOnly, false)
			if err != nil {
				return err
			}
			q := &imgtool.IO{Img: img, Out: os.Stdout, Timing: timing}
			failed := false
			for _, c := range cmds {
				if err := q.Run(c); err != nil {
					failed = true
					if !errors.Is(err, imgtool.ErrIOFailed) {
						fmt.Fprintf(os.Stderr, "vdisk: %s: %v\n", args[0], err)
					}
				}
			}
			if err := img.Close(); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if failed {
				return exitCode(1, nil)
			}
			return nil
		},
	}
	of.register(cmd.Flags(), true)
	cmd.Flags().BoolVarP(&readOnly, "read-only", "r", false, "open the image read-only")
	cmd.Flags().BoolVarP(&timing, "timing", "t", false, "print qemu-io's timing lines")
	cmd.Flags().StringArrayVarP(&cmds, "cmd", "c", nil, "command to run (repeatable)")
	rootCmd.AddCommand(cmd)
}
