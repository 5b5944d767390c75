import lightning as L
import torch

import weightshare as ws


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        )

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        ws.attach(opt, lam=0.5, dim=1)  # the one line: Lightning's steps are opt.step()
        return opt


def main() -> Classifier:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(256, 32, generator=g),
                                          torch.randint(0, 10, (256,), generator=g))  # fmt: skip
    model = Classifier()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=32))
    return model


if __name__ == "__main__":
    main()
