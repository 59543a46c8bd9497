"""The scheduler: places instances on compute nodes and casts their builds."""
