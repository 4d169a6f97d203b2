package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"vdisk/attach/ctl"
)

func init() {
	var stateDir string
	c := &cobra.Command{
		Use:   "rescan UNIT|DEVICE",
		Short: "Make a unit's partitions match its partition table",
		Long: `Re-read the partition table (MBR or GPT) of a unit (vd0) or of the
device it is attached to (/dev/loop3), and make the kernel's partitions
(/dev/loop3p1, …) match it: partitions gone from the table are removed,
new ones added, changed ones replaced. Prints the partitions, one device
a line.

Attach registers the partitions by itself. Run rescan after changing the
table of an attached unit on a kernel built without partition table
parsers (minimal VM kernels): there a tool's request to re-read the table
(BLKRRPART, which sfdisk and fdisk make) drops every partition and finds
none. A changed partition that is mounted or open stays as it was and
rescan fails with EBUSY, naming it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			parts, err := ctl.NewClient(ctl.StateDir(stateDir)).Rescan(args[0])
			for _, p := range parts {
				fmt.Println(p.Device)
			}
			return err
		},
	}
	addStateDirFlag(c, &stateDir)
	rootCmd.AddCommand(c)
}
