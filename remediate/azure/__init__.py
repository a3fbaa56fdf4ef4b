"""Azure clients and the operations the product performs through them."""
