"""Knowledge distillation: a student trained against a frozen teacher."""
