package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"vdisk/attach/ctl"
)

func init() {
	var stateDir, output string
	c := &cobra.Command{
		Use:   "stat [--output human|json] UNIT",
		Short: "Show the fstat of a unit's image file",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			st, _, err := ctl.NewClient(ctl.StateDir(stateDir)).Stat(args[0])
			if err != nil {
				return err
			}
			if output == "json" {
				return printJSON(st)
			}
			ts := func(t ctl.Timespec) string {
				return t.Time().Local().Format("2006-01-02 15:04:05.000000000 -0700")
			}
			fmt.Printf("  File: %s\n", st.Name)
			fmt.Printf("  Size: %-15d Blocks: %-10d IO Block: %d\n", st.Size, st.Blocks, st.Blksize)
			fmt.Printf("Device: %s\tInode: %-11d Links: %d\n", devString(st.Dev), st.Ino, st.Nlink)
			fmt.Printf("Access: (%04o/%s)  Uid: %d  Gid: %d\n", st.Mode&0o7777, os.FileMode(st.Mode&0o777).String(), st.UID, st.GID)
			fmt.Printf("Access: %s\n", ts(st.Atime))
			fmt.Printf("Modify: %s\n", ts(st.Mtime))
			fmt.Printf("Change: %s\n", ts(st.Ctime))
			return nil
		},
	}
	addStateDirFlag(c, &stateDir)
	c.Flags().StringVar(&output, "output", "human", "output format: human or json")
	rootCmd.AddCommand(c)
}

// devString is a device number as stat(1) prints it: major,minor in
// decimal, decoded the way the kernel encodes them (12+20 bits spread over
// 64, not the old 8+8).
func devString(dev uint64) string {
	return fmt.Sprintf("%d,%d", unix.Major(dev), unix.Minor(dev))
}
