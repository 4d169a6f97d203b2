package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"vdisk/block"
)

func init() {
	var (
		of     openFlags
		shrink bool
	)
	cmd := &cobra.Command{
		Use:   "resize [-f FMT] [--shrink] FILE [+|-]SIZE",
		Short: "Change an image's virtual size",
		Long: `Set the virtual size of FILE to SIZE, or grow (+SIZE) or shrink (-SIZE) it
by that much. Shrinking loses the data beyond the new end and needs --shrink.`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, arg := args[0], args[1]
			rel := 0
			switch {
			case strings.HasPrefix(arg, "+"):
				rel, arg = 1, arg[1:]
			case strings.HasPrefix(arg, "-"):
				rel, arg = -1, arg[1:]
			}
			n, err := block.ParseSize(arg)
			if err != nil {
				return fmt.Errorf("%s: %w; you may use K, M, G, T, P or E suffixes", name, err)
			}
			of.resize = true
			img, err := of.open(name, false, true)
			if err != nil {
				return err
			}
			defer img.Close()
			size := n
			switch rel {
			case 1:
				if n > 1<<63-1-img.Size() {
					return fmt.Errorf("%s: new size is too large", name)
				}
				size = img.Size() + n
			case -1:
				size = img.Size() - n
			}
			if size <= 0 {
				// qemu-img refuses an empty image too, however reached.
				return fmt.Errorf("%s: new image size must be positive", name)
			}
			r, ok := img.(block.Resizer)
			if !ok {
				in, _ := img.Info()
				f := "this"
				if in != nil {
					f = "'" + in.Format + "'"
				}
				return fmt.Errorf("%s: format %s does not support resizing", name, f)
			}
			if size < img.Size() && !shrink {
				fmt.Fprintln(os.Stderr, "vdisk: Use the --shrink option to perform a shrink operation.")
				return exitCode(1, errors.New("warning: Shrinking an image will delete all data beyond the shrunken image's end. "+
					"Before performing such an operation, make sure there is no important data there."))
			}
			if err := r.Resize(size, shrink); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if err := img.Close(); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			fmt.Println("Image resized.")
			return nil
		},
	}
	of.register(cmd.Flags(), false)
	cmd.Flags().BoolVar(&shrink, "shrink", false, "allow shrinking the image")
	rootCmd.AddCommand(cmd)
	argFixups = append(argFixups, resizeFixup)
}

// resizeFixup keeps a negative size ("-1G") from being taken for a flag,
// as qemu-img does by removing the size from the arguments before
// parsing options.
func resizeFixup(args []string) []string {
	if len(args) < 3 || args[0] != "resize" {
		return args
	}
	last := args[len(args)-1]
	if len(last) < 2 || last[0] != '-' || last[1] < '0' || last[1] > '9' {
		return args
	}
	for _, a := range args {
		if a == "--" {
			return args
		}
	}
	out := append([]string(nil), args[:len(args)-1]...)
	return append(out, "--", last)
}
