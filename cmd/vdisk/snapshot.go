package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"vdisk/imgtool"
)

// snapshotter is implemented by formats with internal snapshots (qcow2).
type snapshotter interface {
	SnapshotCreate(name string) error
	SnapshotApply(name string) error
	SnapshotDelete(name string) error
}

func init() {
	var (
		of                       openFlags
		list                     bool
		create, apply, deleteArg string
	)
	cmd := &cobra.Command{
		Use:   "snapshot [-f FMT] [-U] -l|-c NAME|-a NAME|-d NAME FILE",
		Short: "List, create, apply or delete internal snapshots",
		Long: `Manage the internal snapshots of an image (qcow2), as qemu-img snapshot:
  -l        list the snapshots
  -c NAME   create a snapshot of the current disk state
  -a NAME   revert the disk to a snapshot (NAME or ID)
  -d NAME   delete a snapshot (NAME or ID)`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			n := 0
			for _, set := range []bool{list, cmd.Flags().Changed("create"), cmd.Flags().Changed("apply"), cmd.Flags().Changed("delete")} {
				if set {
					n++
				}
			}
			if n != 1 {
				return usageError(cmd, "snapshot expects exactly one of -l, -c, -a, -d")
			}
			img, err := of.open(name, list, true)
			if err != nil {
				return err
			}
			defer img.Close()
			if list {
				in, err := img.Info()
				if err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				if len(in.Snapshots) > 0 {
					fmt.Println("Snapshot list:")
					fmt.Println(imgtool.SnapshotHeader())
					for _, s := range in.Snapshots {
						fmt.Println(imgtool.SnapshotLine(s))
					}
				}
				return nil
			}
			sn, ok := img.(snapshotter)
			if !ok {
				in, _ := img.Info()
				f := "this format"
				if in != nil {
					f = "format '" + in.Format + "'"
				}
				return fmt.Errorf("%s: %s does not support internal snapshots", name, f)
			}
			switch {
			case cmd.Flags().Changed("create"):
				if create == "" {
					return errors.New("snapshot name must not be empty")
				}
				err = sn.SnapshotCreate(create)
				if err != nil {
					err = fmt.Errorf("Could not create snapshot '%s': %w", create, err)
				}
			case cmd.Flags().Changed("apply"):
				err = sn.SnapshotApply(apply)
				if err != nil {
					err = fmt.Errorf("Could not apply snapshot '%s': %w", apply, err)
				}
			default:
				err = sn.SnapshotDelete(deleteArg)
				if err != nil {
					err = fmt.Errorf("Could not delete snapshot '%s': %w", deleteArg, err)
				}
			}
			if err != nil {
				return err
			}
			return img.Close()
		},
	}
	of.register(cmd.Flags(), true)
	cmd.Flags().BoolVarP(&list, "list", "l", false, "list snapshots")
	cmd.Flags().StringVarP(&create, "create", "c", "", "create a snapshot")
	cmd.Flags().StringVarP(&apply, "apply", "a", "", "apply (revert to) a snapshot")
	cmd.Flags().StringVarP(&deleteArg, "delete", "d", "", "delete a snapshot")
	rootCmd.AddCommand(cmd)
}
