package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"vdisk/block"
	"vdisk/imgtool"
)

func init() {
	var (
		of     openFlags
		output string
		repair string
	)
	cmd := &cobra.Command{
		Use:   "check [-f FMT] [-r leaks|all] [--output human|json] FILE",
		Short: "Check an image's metadata for consistency",
		Long: `Check an image's metadata, and with -r repair leaks (-r leaks) or all
errors (-r all). Exit status: 0 no errors, 1 the check could not be
completed, 2 corruptions found, 3 only leaked clusters found, 63 the
format does not support checks.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out, err := outputFormat(output)
			if err != nil {
				return err
			}
			mode := block.RepairNone
			switch repair {
			case "":
			case "leaks":
				mode = block.RepairLeaks
			case "all":
				mode = block.RepairAll
			default:
				return usageError(cmd, "invalid -r value '%s': use 'leaks' or 'all'", repair)
			}
			name := args[0]
			of.check = true
			img, err := of.open(name, mode == block.RepairNone, true)
			if err != nil {
				return err
			}
			defer img.Close()
			ck, ok := img.(block.Checker)
			if !ok {
				return exitCode(imgtool.CheckUnsupported, fmt.Errorf("%s: This image format does not support checks", name))
			}
			res, err := ck.Check(mode)
			if err != nil {
				return exitCode(imgtool.CheckFailed, fmt.Errorf("%s: check failed: %w", name, err))
			}
			if res.CorruptionsFixed > 0 || res.LeaksFixed > 0 {
				// As in qemu-img, what the repair found comes first.
				printMessages(res)
				if out == "human" {
					fmt.Print(imgtool.RepairedHeader(res))
				}
				fixedC, fixedL := res.CorruptionsFixed, res.LeaksFixed
				if res, err = ck.Check(block.RepairNone); err != nil {
					return exitCode(imgtool.CheckFailed, fmt.Errorf("%s: check failed: %w", name, err))
				}
				res.CorruptionsFixed, res.LeaksFixed = fixedC, fixedL
			}
			printMessages(res)
			fillNames(res, name, img)
			if out == "json" {
				fmt.Print(imgtool.CheckJSON(res))
			} else {
				fmt.Print(imgtool.CheckHuman(res))
			}
			code := imgtool.CheckStatus(res)
			if code == imgtool.CheckFailed {
				return exitCode(code, fmt.Errorf("%s: check failed", name))
			}
			if code != 0 {
				return exitCode(code, nil)
			}
			return nil
		},
	}
	of.register(cmd.Flags(), true)
	cmd.Flags().StringVar(&output, "output", "human", "output format: human or json")
	cmd.Flags().StringVarP(&repair, "repair", "r", "", "repair: leaks or all")
	rootCmd.AddCommand(cmd)
}

// printMessages shows the driver's findings on stderr, as qemu-img does.
func printMessages(r *block.CheckResult) {
	for _, m := range r.Messages {
		fmt.Fprintln(os.Stderr, m)
	}
	r.Messages = nil
}

func fillNames(r *block.CheckResult, name string, img block.Image) {
	if r.Filename == "" {
		r.Filename = name
	}
	if r.Format == "" {
		if in, err := img.Info(); err == nil {
			r.Format = in.Format
		}
	}
}
