package sqlstore

import (
	"context"
	"fmt"

	"nullspace.dev/nullspace/internal/store"
)

// CreateSpare stores a spare and gives it, in the same transaction, the
// lowest free network slot (as CreateMachine does).
func (s *DB) CreateSpare(ctx context.Context, sp *store.Spare, slots int) error {
	return s.withFreeSlot(ctx, "create spare "+sp.MachineID, slots, func(c conn, slot int) error {
		if _, err := c.exec(ctx, `INSERT INTO spares (machine_id, container_id, slot, shape, created_at, node_id) VALUES (?,?,?,?,?,?)`,
			sp.MachineID, sp.ContainerID, slot, sp.Shape, at(sp.CreatedAt), c.f.nodeID()); err != nil {
			return fmt.Errorf("insert spare %s: %w", sp.MachineID, err)
		}
		sp.Slot, sp.NodeID = slot, c.f.nodeID()
		return nil
	})
}

// DeleteSpare removes a spare's row; deleting a missing spare is not an error.
func (s *DB) DeleteSpare(ctx context.Context, machineID string) error {
	if _, err := s.c().exec(ctx, `DELETE FROM spares WHERE machine_id = ?`, machineID); err != nil {
		return fmt.Errorf("delete spare %s: %w", machineID, err)
	}
	return nil
}

// ListSpares returns the spares of the store's node, oldest first.
func (s *DB) ListSpares(ctx context.Context) ([]*store.Spare, error) {
	return queryAll(ctx, s.c(), "list spares", `SELECT machine_id, container_id, slot, shape, created_at, node_id FROM spares WHERE node_id = ? ORDER BY created_at, machine_id`,
		[]any{s.f.nodeID()},
		func(r scanner) (*store.Spare, error) {
			var sp store.Spare
			if err := r.Scan(&sp.MachineID, &sp.ContainerID, &sp.Slot, &sp.Shape, timeDest{&sp.CreatedAt}, &sp.NodeID); err != nil {
				return nil, err
			}
			return &sp, nil
		})
}
