package main

import (
	"fmt"
	"math"

	"github.com/spf13/cobra"

	"vdisk/block"
	"vdisk/imgtool"
)

func init() {
	var (
		of            openFlags
		output        string
		start, length string
	)
	cmd := &cobra.Command{
		Use:   "map [-f FMT] [--output human|json] [-U] [-s START] [-l LEN] FILE",
		Short: "Show which ranges of an image hold data, zeros, or come from its backing chain",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out, err := outputFormat(output)
			if err != nil {
				return err
			}
			off, n := int64(0), int64(math.MaxInt64)
			if start != "" {
				if off, err = block.ParseSize(start); err != nil {
					return exitCode(1, fmt.Errorf("--start-offset: %w", err))
				}
			}
			if length != "" {
				if n, err = block.ParseSize(length); err != nil {
					return exitCode(1, fmt.Errorf("--max-length: %w", err))
				}
			}
			img, err := of.open(args[0], true, false)
			if err != nil {
				return err
			}
			defer img.Close()
			exts, err := imgtool.Map(img, off, n)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if out == "json" {
				fmt.Print(imgtool.MapJSON(exts))
				return nil
			}
			s, err := imgtool.MapHuman(exts)
			fmt.Print(s)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return nil
		},
	}
	of.register(cmd.Flags(), true)
	cmd.Flags().StringVar(&output, "output", "human", "output format: human or json")
	cmd.Flags().StringVarP(&start, "start-offset", "s", "", "first byte to map")
	cmd.Flags().StringVarP(&length, "max-length", "l", "", "bytes to map at most")
	rootCmd.AddCommand(cmd)
}
