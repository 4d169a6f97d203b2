package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"vdisk/imgtool"
)

func init() {
	var (
		of     openFlags
		output string
		chain  bool
	)
	cmd := &cobra.Command{
		Use:   "info [-f FMT] [--output human|json] [--backing-chain] [-U] FILE",
		Short: "Show information about an image",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out, err := outputFormat(output)
			if err != nil {
				return err
			}
			img, err := of.open(args[0], true, !chain)
			if err != nil {
				return err
			}
			defer img.Close()
			infos, err := imgtool.ChainInfo(img, chain)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if out == "json" {
				fmt.Print(imgtool.InfoJSON(infos, chain))
			} else {
				fmt.Print(imgtool.InfoHuman(infos))
			}
			return nil
		},
	}
	of.register(cmd.Flags(), true)
	cmd.Flags().StringVar(&output, "output", "human", "output format: human or json")
	cmd.Flags().BoolVar(&chain, "backing-chain", false, "show the whole backing chain")
	rootCmd.AddCommand(cmd)
}
