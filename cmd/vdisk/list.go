package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"vdisk/attach/ctl"
	"vdisk/block"
)

func checkOutput(o string) error {
	if o != "human" && o != "json" {
		return fmt.Errorf("--output must be human or json, not '%s'", o)
	}
	return nil
}

func printJSON(v any) error {
	b, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func init() {
	var stateDir, output string
	var counters bool
	c := &cobra.Command{
		Use:   "list [--output human|json] [--counters=false]",
		Short: "List attached units",
		Long: `List attached units: the device, the image file name exactly as given at
attach, format, read-only, sector size, virtual size, and the I/O
counters: requests served, bytes, flushes, discards and errors.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			units, err := ctl.NewClient(ctl.StateDir(stateDir)).List()
			if err != nil {
				return err
			}
			if output == "json" {
				return printJSON(units)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			hdr := "UNIT\tDEVICE\tFORMAT\tRO\tSECTOR\tSIZE\tFILE"
			if counters {
				hdr += "\tREADS\tWRITES\tREAD\tWRITTEN\tFLUSHES\tDISCARDS\tERRORS"
			}
			fmt.Fprintln(w, hdr)
			for _, u := range units {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s", u.Unit, u.Device, u.Format, yesNo(u.ReadOnly), u.SectorSize, block.FormatSize(u.VirtualSize), u.File)
				if counters {
					k := u.Counters
					fmt.Fprintf(w, "\t%d\t%d\t%d\t%d\t%d\t%d\t%d", k.Reads, k.Writes, k.BytesRead, k.BytesWritten, k.Flushes, k.Discards, k.Errors)
				}
				fmt.Fprintln(w)
			}
			return w.Flush()
		},
	}
	addStateDirFlag(c, &stateDir)
	c.Flags().StringVar(&output, "output", "human", "output format: human or json")
	c.Flags().BoolVar(&counters, "counters", true, "show I/O counters in human output (--counters=false hides them)")
	rootCmd.AddCommand(c)
}
