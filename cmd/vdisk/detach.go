package main

import (
	"github.com/spf13/cobra"

	"vdisk/attach/ctl"
)

func init() {
	var stateDir string
	var force bool
	c := &cobra.Command{
		Use:   "detach [-f] UNIT|DEVICE",
		Short: "Detach a unit",
		Long: `Detach a unit (vd0) or the device it is attached to (/dev/loop3). A
device in use (mounted, held by another block device, or open by a
process) is refused with EBUSY unless -f: a forced detach flushes the
image, makes further I/O on the device fail with EIO, and releases the
device once its users let go.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := ctl.NewClient(ctl.StateDir(stateDir)).Detach(args[0], force)
			return err
		},
	}
	addStateDirFlag(c, &stateDir)
	c.Flags().BoolVarP(&force, "force", "f", false, "detach even when the device is in use")
	rootCmd.AddCommand(c)
}
