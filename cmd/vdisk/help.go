package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// The help command fails on an unknown topic, instead of cobra's default
// of printing the overview and exiting 0.
func init() {
	rootCmd.SetHelpCommand(&cobra.Command{
		Use:   "help [COMMAND]",
		Short: "Show help for a command",
		RunE: func(cmd *cobra.Command, args []string) error {
			target, rest, err := rootCmd.Find(args)
			if err != nil || target == nil || len(rest) > 0 {
				return fmt.Errorf("no help for unknown command '%s'; 'vdisk help' lists the commands", strings.Join(args, " "))
			}
			return target.Help()
		},
	})
}
