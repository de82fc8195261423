-- keel:destroy-batch v1
-- keel's batched destroy: `zfs program POOL destroy-batch.lua NAME...` (zfs-program(8)).
-- Destroys the named datasets in the order given inside one channel program (one txg, no
-- other administrative operation in between), all or nothing:
--  * a name that does not exist is skipped, so a retry after an unknown outcome is safe;
--  * every destroy is first checked (zfs.check.destroy) against the pool as it is, except a
--    dataset whose dependents (the clones of a snapshot, the snapshots of a volume) are all
--    earlier in the batch: its check would see them, so it is only checked when they are
--    gone, in the second pass;
--  * if any check fails, error() before anything changed: "nothing destroyed", then one
--    line "failed: ERRNO NAME" per refused name (16 EBUSY: open or has snapshots, 17 EEXIST:
--    has clones or children);
--  * then everything is destroyed in order; a failure there (possible only for a dataset
--    checked late) stops with "destroyed K of N" and its "failed:" line.
-- Returns the number of datasets destroyed. Callers put clones before the snapshots they
-- come from and snapshots before their volume.
-- interop/fake-zfs (which has no Lua) runs exactly this code: edit both together. Comments
-- may change freely; the fake compares the code lines.
args = ...
argv = args["argv"]
going = {}
todo = {}
failed = {}
for _, name in ipairs(argv) do
    if zfs.exists(name) then
        local dependents
        if string.find(name, "@", 1, true) then
            dependents = zfs.list.clones(name)
        else
            dependents = zfs.list.snapshots(name)
        end
        local any, outside = false, false
        for dependent in dependents do
            any = true
            if not going[dependent] then
                outside = true
            end
        end
        local err = 0
        if outside or not any then
            err = zfs.check.destroy(name)
        end
        if err ~= 0 then
            failed[#failed + 1] = "failed: " .. err .. " " .. name
        else
            going[name] = true
            todo[#todo + 1] = name
        end
    end
end
if #failed > 0 then
    error("keel:destroy-batch: nothing destroyed\n" .. table.concat(failed, "\n"))
end
for i, name in ipairs(todo) do
    local err = zfs.sync.destroy(name)
    if err ~= 0 then
        error("keel:destroy-batch: destroyed " .. (i - 1) .. " of " .. #todo .. "\nfailed: " .. err .. " " .. name)
    end
end
return #todo
