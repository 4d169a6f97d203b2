package main

import (
	"os"

	"github.com/spf13/cobra"

	"vdisk/imgtool"
)

func init() {
	var (
		ofA    openFlags
		fmtB   string
		strict bool
	)
	cmd := &cobra.Command{
		Use:   "compare [-f FMT] [-F FMT] [-s] [-U] A B",
		Short: "Compare the content of two images",
		Long: `Compare the virtual content of images A and B. Exit status: 0 same
content, 1 different, 2 an image could not be opened, 3 block status could
not be read, 4 data could not be read. Images of different sizes are equal
when the larger one reads as zeros past the end of the smaller; -s (strict)
also requires equal sizes and equal allocation.`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := ofA.open(args[0], true, false)
			if err != nil {
				return exitCode(imgtool.CompareOpenError, err)
			}
			defer a.Close()
			ofB := ofA
			ofB.format = fmtB
			b, err := ofB.open(args[1], true, false)
			if err != nil {
				return exitCode(imgtool.CompareOpenError, err)
			}
			defer b.Close()
			code, err := imgtool.Compare(a, b, args[0], args[1], strict, os.Stdout)
			if code != 0 {
				return exitCode(code, err)
			}
			return nil
		},
	}
	ofA.register(cmd.Flags(), true)
	cmd.Flags().StringVarP(&fmtB, "second-format", "F", "", "format of the second image (probed when omitted)")
	cmd.Flags().BoolVarP(&strict, "strict", "s", false, "strict mode: sizes and allocation must match too")
	rootCmd.AddCommand(cmd)
}
